#!/bin/sh
# batchd must never execute inbox files
echo pwned > /tmp/batchd-pwned
