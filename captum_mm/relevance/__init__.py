"""Pure tensor algebra of the relevance rules; knows nothing of any model."""
