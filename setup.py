from setuptools import setup

setup(
    name="mspt",
    version="0.1.0",
    description="Continual multimodal knowledge-graph construction (MSPT, IJCAI 2024) for the Hugging Face stack",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=["modeling_mspt", "continual_trainer", "datasets_scripts"],
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
        "aiohttp",  # datasets downloads the real split files over http(s) through fsspec
    ],
    extras_require={
        "test": ["pytest"],
        "plots": ["matplotlib"],
        "kg": ["rdflib"],
    },
)
