#!/bin/sh
# Classify one image with curl: predict.sh API_URL IMAGE [API_KEY]
#   API_URL  the API's base URL: the local runtime's (make demo prints it) or the stage's invoke URL
#   API_KEY  the x-api-key of your client (python -m breedline.deploy api-key create ...); none locally
# Content-Type must be the image's type: image/jpeg, image/png, image/heic or image/heif.
set -eu
api_url=$1 image=$2 api_key=${3:-}
case "$image" in
  *.png|*.PNG) type=image/png ;;
  *.heic|*.HEIC) type=image/heic ;;
  *.heif|*.HEIF) type=image/heif ;;
  *) type=image/jpeg ;;
esac
exec curl --silent --show-error --max-time 30 \
  -H "Content-Type: $type" ${api_key:+-H "x-api-key: $api_key"} \
  --data-binary "@$image" "$api_url/predict"
