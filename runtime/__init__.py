"""The process: HTTP server, pipelines, dispatcher, workers and the CLI."""
