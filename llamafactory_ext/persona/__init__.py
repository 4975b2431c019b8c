"""A persona as data: chat templates (templates/*.yaml) and datasets (datasets/dataset_info.json), declared,
validated and registered into LLaMA-Factory."""
