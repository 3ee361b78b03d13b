"""Thin routers: validate -> lease a model -> call it -> encode the response."""
