"""Storage helpers shared by the gallery backends and the API key stores."""
