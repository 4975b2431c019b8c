"""llamafactory-ext: persona chat templates and datasets for LLaMA-Factory, without forking it.

    import llamafactory_ext
    llamafactory_ext.register_templates()   # -> ["llama3-persona", "qwen-persona"]
"""

from .datasets import register_datasets
from .templates import register_templates

__all__ = ["register_datasets", "register_templates"]
__version__ = "0.1.0"
