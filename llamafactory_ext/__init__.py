"""llamafactory-ext: persona chat templates and datasets for LLaMA-Factory, without forking it.

    import llamafactory_ext
    llamafactory_ext.register_templates()   # -> ["llama3-persona", "qwen-persona", "smollm2-persona"]

Imports are lazy: `python -m llamafactory_ext.run.pod_install` and `-m llamafactory_ext.secrets` run on a
fresh pod with the standard library only, before the package's dependencies are installed.
"""

__all__ = ["register_datasets", "register_templates"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "register_templates":
        from .persona.registration import register_templates

        return register_templates
    if name == "register_datasets":
        from .persona.registration import register_datasets

        return register_datasets
    raise AttributeError(f"module 'llamafactory_ext' has no attribute '{name}'")
