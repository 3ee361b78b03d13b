"""OpenAI wire models (pydantic), one module per resource. Data only."""
