"""The README's quickstart runs as written."""

import re
from pathlib import Path


def test_readme_quickstart_runs(capsys):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    quickstart = next(b for b in blocks if "from_text_vision_pretrained" in b)
    exec(compile(quickstart, "README.md", "exec"), {})  # our own documentation, not untrusted input
    printed = capsys.readouterr().out.split()
    assert printed[0] in {"None", "/per/loc/place_of_residence", "/per/per/couple"}
    assert printed[1:] == ["torch.Size([1,", "3])", "torch.Size([1,", "3])"]
