"""The launcher: the `cosmogan` command line and the processes behind serve, api and worker."""
