#!/bin/sh
# Shell customizer from a scriptUri: a department layers its own settings on the platform team's image.
set -e
test -s /srv/www/index.html   # the base image's page is there: this image is layered on it
echo "team image: built on the platform baseline" | sudo tee /etc/team-release >/dev/null
sudo mkdir -p /srv/www/team
echo "<p>team page</p>" | sudo tee /srv/www/team/index.html >/dev/null
