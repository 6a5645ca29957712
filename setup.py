"""Maps the top-level folders adapters/, metrics/ and datasets/ to xaibench.adapters,
xaibench.metrics and xaibench.datasets (never top-level `metrics`/`datasets` packages,
which would clash with other libraries). Every sub-package found is included, so a new
family folder needs no edit here."""

from setuptools import find_packages, setup

ROOTS = {"xaibench": "xaibench", "xaibench.adapters": "adapters",
         "xaibench.metrics": "metrics", "xaibench.datasets": "datasets"}

packages, package_dir = [], {}
for pkg, folder in ROOTS.items():
    package_dir[pkg] = folder
    packages.append(pkg)
    for sub in find_packages(folder):
        packages.append(f"{pkg}.{sub}")
        package_dir[f"{pkg}.{sub}"] = f"{folder}/{sub.replace('.', '/')}"
# xaibench's own sub-packages resolve through the "xaibench" entry
package_dir = {k: v for k, v in package_dir.items() if not (k.startswith("xaibench.") and v.startswith("xaibench/"))}

setup(packages=packages, package_dir=package_dir)
