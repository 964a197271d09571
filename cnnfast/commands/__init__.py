"""One module per ``cnnfast`` sub-command (see ``cnnfast.cli``)."""
