from setuptools import setup

setup(
    name="mspt",
    version="0.1.0",
    description="Continual multimodal knowledge-graph construction (MSPT, IJCAI 2024) for the Hugging Face stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    # `mspt_metrics` is the `metrics/` folder: the local `evaluate` metric modules, shipped as files (not imported)
    # so that `continual_trainer.metrics.metric_path(name)` finds them in a checkout, an editable or a wheel install.
    packages=["modeling_mspt", "continual_trainer", "datasets_scripts", "mspt_metrics"],
    package_dir={"mspt_metrics": "metrics"},
    package_data={"mspt_metrics": ["README.md", "*/*.py", "*/README.md"]},
    install_requires=[
        "torch>=2.4",
        "transformers>=5.0",
        "datasets>=4.0",
        "accelerate>=1.0",
        "safetensors",
        "huggingface_hub",
        "pillow",
        "numpy",
        "seqeval",
        "evaluate>=0.4.6",  # the metrics in metrics/ are local `evaluate` modules
        "aiohttp",  # datasets downloads the real split files over http(s) through fsspec
    ],
    extras_require={
        "test": ["pytest", "tensorboard"],  # tensorboard: the report_to test reads its event file back
        "plots": ["matplotlib", "networkx"],  # networkx (the graph picture's layout) also comes with torch
        "kg": ["rdflib"],
    },
)
