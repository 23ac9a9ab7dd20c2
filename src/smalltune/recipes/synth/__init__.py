"""Data writers for the recipes: generators (complaints, policy pages) and the shared real data sets (TNEWS, huanhuan)."""
