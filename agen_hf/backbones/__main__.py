"""``python -m agen_hf.backbones``: every registered backbone, its family, what its body can
follow, its output stride, the options it takes and the weight file it loads."""

from . import prefixes, registered


def main() -> None:
    for spec in registered():
        stride = spec.output_stride or "its own"
        follows = f"; follows the stems of {', '.join(spec.follows)}" if spec.follows else ""
        options = ", ".join(spec.option_names or ()) or "none"
        print(
            f"{spec.name}\n  {spec.summary}\n  family {spec.family}{follows}; output stride "
            f"{stride}; options: {options}\n  weights: {spec.weights}"
        )
    for prefix in prefixes():
        print(
            f"{prefix}:<model name>\n  any {prefix} model with features_only (pip install "
            f"'agen_hf[{prefix}]'); options: {prefix}.create_model's"
        )


if __name__ == "__main__":
    main()
