"""Classify one image with Python's requests: ``python classify_image.py API_URL IMAGE [API_KEY]``.

Prints the API's JSON answer. An error answer is JSON too ({"code", "message"}),
so the status code and the code decide what to do: 4xx means fix the request,
429/502/503/504 means try again later.
"""

from __future__ import annotations

import json
import mimetypes
import sys

import requests


def predict(api_url: str, image_path: str, api_key: str = "", abstain: bool = True) -> tuple[int, dict]:
    """POST the image's bytes to /predict; returns (HTTP status, JSON body)."""
    content_type = mimetypes.guess_type(image_path)[0] or "image/jpeg"
    headers = {"Content-Type": content_type}
    if api_key:
        headers["x-api-key"] = api_key
    params = {} if abstain else {"abstain": "false"}
    with open(image_path, "rb") as image:
        answer = requests.post(f"{api_url.rstrip('/')}/predict", data=image.read(), headers=headers,
                               params=params, timeout=30)
    return answer.status_code, answer.json()


if __name__ == "__main__":
    status, body = predict(sys.argv[1], sys.argv[2], *(sys.argv[3:4]))
    print(json.dumps(body, indent=2))
    sys.exit(0 if status == 200 else 1)
