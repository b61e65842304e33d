"""OpenAI's chat.completions and completions, answered by Tunery's inference server."""
