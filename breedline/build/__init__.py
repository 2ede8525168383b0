"""What the local runtime and the deploy tool both build from the checkout.

- :mod:`breedline.build.paths`: where the code roots and build folders are;
- :mod:`breedline.build.image_uris`: the SageMaker image URIs for a region;
- :mod:`breedline.build.sourcedir`: ``sourcedir.tar.gz``, the ML scripts as SageMaker unpacks them;
- :mod:`breedline.build.lambda_app`: the build copy of ``chalice_app/`` that ``chalice package`` zips.

Nothing here talks to AWS; everything works offline.
"""
