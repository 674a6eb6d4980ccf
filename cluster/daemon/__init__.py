"""The standalone node daemon: command line, config file and reload, HTTP, RESP, ctl."""
