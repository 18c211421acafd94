from setuptools import find_packages, setup

setup(
    name="mindone",
    version="0.1.0",
    description="Hugging Face transformers' causal language models and generate() API on MindSpore",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mindone", "mindone.*"]),
    # the fused CPU kernels are compiled from these sources on first use (mindone/transformers/kernels/builder.py)
    package_data={"mindone.transformers.kernels": ["csrc/*.cc", "csrc/*.h"]},
    python_requires=">=3.9,<3.13",
    install_requires=[
        "mindspore==2.7.1",
        "transformers==4.57.1",
        "tokenizers==0.22.2",
        "safetensors==0.8.0",
        "numpy==1.26.4",
        "gguf==0.19.0",
        "tqdm==4.70.1",
        "huggingface_hub==0.36.2",
        "jinja2==3.1.6",
    ],
    entry_points={
        "console_scripts": [
            "mindone-convert-gguf=mindone.transformers.convert_gguf:main",
            "mindone-generate=mindone.transformers.batch.cli:main",
            "mindone-chat=mindone.transformers.chat:main",
        ]
    },
)
