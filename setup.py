"""The build step that puts the repository's ``templates/`` and ``prefect.yaml`` into the wheel.

They stay where marketers and ``prefect deploy`` expect them in a clone (one copy, no drift); a wheel gets
them under ``activation/defaults/`` (see ``activation/defaults.py``). An editable install reads the clone's.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
DEFAULTS = ("templates", "prefect.yaml")


class build_py_with_defaults(build_py):
    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        dest = Path(self.build_lib) / "activation" / "defaults"
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for name in DEFAULTS:
            src = ROOT / name
            if src.is_dir():
                shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".*"))
            else:
                shutil.copy2(src, dest / name)


setup(cmdclass={"build_py": build_py_with_defaults})
