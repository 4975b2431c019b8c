"""Publishing to the Hugging Face Hub: which files go up, the model card, the push."""
