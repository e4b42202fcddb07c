#!/usr/bin/env bash
# Installs the Debian packages building switchboard needs beyond a Rust toolchain: cmake and a C
# compiler for librdkafka (built from source by the rdkafka crate), and the headers it compiles
# against (OpenSSL's for TLS and SCRAM, found through pkg-config), openssl, with which the engine
# scripts and tests make TLS certificates, Prometheus, against which the dashboards and alerts
# are checked, and Node.js with npm, for the TypeScript client and the Socket.IO clients the tests
# drive, and Chromium, in which the web app's browser tests run. Does nothing when they are all
# there.
set -euo pipefail

needed=()
command -v cmake >/dev/null || needed+=(cmake)
command -v cc >/dev/null || needed+=(build-essential)
command -v openssl >/dev/null || needed+=(openssl)
# The monitoring check runs a real Prometheus (with promtool) and reads the rules with PyYAML.
command -v prometheus >/dev/null || needed+=(prometheus)
python3 -c 'import yaml' 2>/dev/null || needed+=(python3-yaml)
# examples/analytics runs in a virtual environment of its own.
python3 -c 'import ensurepip' 2>/dev/null || needed+=(python3-venv)
# The TypeScript client builds and tests with Node.js and npm; the /socket.io/ tests drive the
# official Socket.IO client of Node.js.
command -v node >/dev/null || needed+=(nodejs)
command -v npm >/dev/null || needed+=(npm)
# The web app's browser tests drive Debian's Chromium (headless, fake camera and microphone).
command -v chromium >/dev/null || needed+=(chromium)
for package in libcurl4-openssl-dev libsasl2-dev libssl-dev pkg-config zlib1g-dev; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || needed+=("$package")
done
if [ ${#needed[@]} -eq 0 ]; then
    echo "system packages: all present"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "ops/deps.sh: missing ${needed[*]}; run as root or install them with apt-get" >&2
    exit 1
fi
echo "system packages: installing ${needed[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${needed[@]}"
