"""OpenAI and Azure OpenAI: chat (realtime), the Batch API, the fine-tuning API, Azure
deployments, the wire formats, token counting and the exported files."""
