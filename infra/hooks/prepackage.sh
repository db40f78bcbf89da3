#!/bin/sh
# azd prepackage hook: images are tagged with the commit they are built from, never "latest".
# A dirty work tree gets a "-dirty" suffix, so such an image can never pass for the commit.
set -eu
tag=$(git rev-parse HEAD)
if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
    tag="$tag-dirty"
fi
azd env set DIFFLANE_IMAGE_TAG "$tag"
echo "images will be tagged $tag"
