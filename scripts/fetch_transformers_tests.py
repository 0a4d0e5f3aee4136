"""Fetch transformers' own common test mixins for the installed transformers version.

`tests/test_transformers_common.py` runs `ModelTesterMixin`, `ConfigTester` and `TokenizerTesterMixin` against
music-hf the way a model inside transformers is tested. Those mixins ship in transformers' source distribution
(the top-level `tests/*.py` files), not in the wheel, so this script downloads the sdist of the installed version
from the package index and unpacks those files as an importable package `transformers_tests` under
`--dest/<version>/`. Nothing of it is committed.

The sdist leaves out three modules that `test_modeling_common.py` / `test_configuration_common.py` import:
`generation/test_utils.py` (GenerationTesterMixin), `exporters/test_export.py` (ExportTesterMixin) and
`utils/test_configuration_utils.py` (`config_common_kwargs`). Minimal stand-ins are written for them: empty
mixins (so no generation or export test runs from here; music-hf's own tests cover generate) and a
`config_common_kwargs` built from `PreTrainedConfig`'s own boolean fields, each flipped.

    python scripts/fetch_transformers_tests.py            # into .cache/transformers-tests/<version>
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

DEFAULT_DEST = Path(__file__).resolve().parent.parent / ".cache" / "transformers-tests"
PACKAGE = "transformers_tests"

STANDINS = {
    "generation/test_utils.py": '''"""Stand-in: the sdist does not ship transformers' generation tests."""


class GenerationTesterMixin:
    """Empty: music-hf's generate() behaviour is tested in its own test suite."""
''',
    "exporters/test_export.py": '''"""Stand-in: the sdist does not ship transformers' exporter tests."""


class ExportTesterMixin:
    """Empty: torch.export is not part of music-hf's contract."""
''',
    "utils/test_configuration_utils.py": '''"""Stand-in: PreTrainedConfig's boolean fields, each set to the opposite of its default."""

import dataclasses

from transformers import PreTrainedConfig

config_common_kwargs = {
    f.name: not f.default
    for f in dataclasses.fields(PreTrainedConfig)
    if isinstance(f.default, bool) and not f.name.startswith("_")
}
''',
}


def installed_transformers_version() -> str:
    import transformers

    return transformers.__version__


def fetch(dest: Path, version: str) -> Path:
    """Unpack the version's common test files into `dest/version/transformers_tests`; return the folder to put on
    sys.path. Reuses an earlier download."""
    root = dest / version
    package = root / PACKAGE
    if (package / "test_modeling_common.py").is_file():
        return root
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
                        f"transformers=={version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("transformers-*.tar.gz"))
        package.mkdir(parents=True, exist_ok=True)
        with tarfile.open(sdist) as tar:
            prefix = f"transformers-{version}/tests/"
            for member in tar.getmembers():
                name = member.name[len(prefix):] if member.name.startswith(prefix) else None
                if name and member.isfile() and "/" not in name and name.endswith(".py"):
                    member.name = name
                    tar.extract(member, package, filter="data")
    (package / "__init__.py").touch()
    for rel, text in STANDINS.items():
        path = package / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            (path.parent / "__init__.py").touch()
            path.write_text(text)
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help="where to unpack (default: %(default)s)")
    parser.add_argument("--version", default=None, help="transformers version (default: the installed one)")
    args = parser.parse_args()
    print(fetch(args.dest, args.version or installed_transformers_version()))


if __name__ == "__main__":
    main()
