"""Maps the top-level folders kernels/, pipelines/ and data_recipes/ into the one import namespace
``mamba_bio_audio`` (as ``mamba_bio_audio.kernels`` and so on), subpackages included. Metadata is in pyproject.toml."""
from setuptools import find_packages, setup

MAPPED_FOLDERS = {
    "kernels": "mamba_bio_audio.kernels",
    "pipelines": "mamba_bio_audio.pipelines",
    "data_recipes": "mamba_bio_audio.data_recipes",
}

packages = find_packages(include=["mamba_bio_audio", "mamba_bio_audio.*"])
package_dir = {"mamba_bio_audio": "mamba_bio_audio"}
for folder, name in MAPPED_FOLDERS.items():
    package_dir[name] = folder
    packages += [name] + [f"{name}.{sub}" for sub in find_packages(folder)]

setup(packages=packages, package_dir=package_dir,
      package_data={"mamba_bio_audio": ["configs/*.yaml"], "mamba_bio_audio.pipelines": ["configs/*/*.yaml"]})
