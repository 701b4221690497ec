"""Map the design card's top-level folders into the single import root ``zcrepl``.

``zcrepl`` itself is an implicit namespace package; each folder becomes ``zcrepl.<folder>`` and is
searched with find_packages so a new sub-package can never silently miss the wheel.
"""

from setuptools import find_packages, setup

FOLDERS = ("core", "proto", "agent", "controller", "cli")

package_dir: dict[str, str] = {}
packages: list[str] = []
for folder in FOLDERS:
    package_dir[f"zcrepl.{folder}"] = folder
    packages.append(f"zcrepl.{folder}")
    for sub in find_packages(folder):
        package_dir[f"zcrepl.{folder}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
        packages.append(f"zcrepl.{folder}.{sub}")

setup(package_dir=package_dir, packages=packages)
