"""Configuration: YAML presets merged, validated against a schema generated from the plug-in registries."""
