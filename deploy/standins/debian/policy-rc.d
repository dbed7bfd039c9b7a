#!/bin/sh
# Containers have no init: package scripts must not start services.
exit 101
