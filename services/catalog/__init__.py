"""The policy catalog: above the three services, it loads a directory into one set.

It knows every service's document kinds (each service exports its own), reads
files, dispatches documents through a table, links the services' configs, and
holds the serving set while watching the directory for changes.
"""
