"""The HTTP API of a broker's CRM (`/api/v1`): auth, models, routes, the OpenAPI document."""
