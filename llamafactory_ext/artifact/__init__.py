"""What training leaves, made into a model others can load: the shard-wise merge, portable tokenizer files and
stop metadata, and the GGUF export."""
