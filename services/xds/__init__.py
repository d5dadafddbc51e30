"""The xds service: an Aggregated Discovery Service that configures gateway Envoys."""
