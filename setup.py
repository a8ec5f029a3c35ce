from setuptools import find_packages, setup


setup(
    name="diffusers-binflow",
    version="0.1.0",
    description="Binary flow matching (prediction-loss space alignment, arXiv 2602.10420) for Hugging Face diffusers",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    # The code's licence, and that of the bundled MNIST digits (CC BY-SA 3.0) shipped in the wheel.
    license_files=["LICENSE", "diffusers_binflow/data/DATA_LICENSE.md"],
    project_urls={
        "Homepage": "https://github.com/diffusers-binflow/diffusers-binflow",
        "Source": "https://github.com/diffusers-binflow/diffusers-binflow",
        "Issues": "https://github.com/diffusers-binflow/diffusers-binflow/issues",
    },
    python_requires=">=3.11",
    # The top-level pipelines/ folder (Hub-side code uploaded with pushed pipelines) ships as diffusers_binflow.hub_code.
    packages=find_packages(include=["diffusers_binflow", "diffusers_binflow.*"]) + ["diffusers_binflow.hub_code"],
    package_dir={"diffusers_binflow.hub_code": "pipelines"},
    package_data={
        "diffusers_binflow.hub_code": ["*.py", "*.md", "components/*.py"],
        "diffusers_binflow.data": ["*.npz", "*.md"],
        "diffusers_binflow.metrics": ["*.safetensors", "*.json"],
        "diffusers_binflow.model_cards": ["*.md"],
    },
    # Floors: diffusers 0.42 is the first release that accepts huggingface_hub 2.x (and needs Python 3.11);
    # transformers 5 is the line that works with hub >= 1.31. The whole test suite passes both at the floors
    # (diffusers 0.42.0, huggingface-hub 1.32.0, transformers 5.0.0, accelerate 1.0.0) and at the newest releases
    # (0.42.1, 2.4.0, 5.24.0, 1.15.0), each with torch 2.13.0; torch>=2.6 is diffusers' own floor.
    install_requires=[
        "diffusers>=0.42.0",
        "torch>=2.6",
        "transformers>=5.0",
        "accelerate>=1.0",
        "huggingface-hub>=1.32,<3",
        "safetensors>=0.4",
        "numpy>=1.26",
        "Pillow>=10",
        # Sionna (Apache-2.0, PyTorch): MIMO channels, constellations and the classical detectors.
        "sionna-no-rt>=2.2",
    ],
    extras_require={
        # Jinja2 renders model cards; tensorboard is optional logging; datasets reads --dataset_name.
        "training": ["Jinja2>=3.1", "tensorboard>=2.14", "datasets>=3.0"],
        "test": ["pytest>=8.0"],
        "benchmarks": ["matplotlib>=3.8"],
        # Meta's discrete flow matching, a peer in benchmarks/peers_digits.py. CC BY-NC 4.0: never copied or imported
        # by the library, and installed only on request (`make peers`), never by `make install`. Its wheel also
        # installs a top-level `tests` package into site-packages (ours wins under pytest).
        "peers": ["flow-matching>=1.0.10"],
    },
)
