"""`lfx export`: the persona for local runtimes, a GGUF through llama.cpp's own converter and an Ollama
Modelfile whose template, system prompt and stop words are the persona's."""
