// Breedline's browser client: the same code the try-it page runs, and the JavaScript example of
// docs/clients.md. No dependencies, no build step: an ES module for any current browser.
//
// Why resize here: a 12 MP phone photo is 3-5 MB, and the model looks at a few hundred pixels.
// Sending a JPEG whose shorter side is SHORTER_SIDE keeps the server's answer the same (the test
// of the page checks it) for a fraction of the bytes and of the upload time on a phone network.

/** Shorter side, in pixels, of what the page uploads: twice the largest model's resize size (256). */
export const SHORTER_SIDE = 512;
/** JPEG quality of the re-encoded upload. */
export const JPEG_QUALITY = 0.9;

/**
 * A smaller JPEG of `file` for upload, or `file` itself when it is small already or the browser
 * cannot decode it (HEIC in Chromium: the server decodes it then).
 * EXIF orientation is applied by createImageBitmap ("from-image"), so the pixels sent are upright.
 */
export async function downscale(file, { shorterSide = SHORTER_SIDE, quality = JPEG_QUALITY } = {}) {
  let bitmap;
  try {
    bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (error) {
    return { blob: file, resized: false, width: null, height: null };
  }
  const scale = shorterSide / Math.min(bitmap.width, bitmap.height);
  if (scale >= 1) {
    const size = { width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return { blob: file, resized: false, ...size };
  }
  const width = Math.round(bitmap.width * scale);
  const height = Math.round(bitmap.height * scale);
  const canvas = document.createElement("canvas");
  canvas.width = width;
  canvas.height = height;
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = true;
  context.imageSmoothingQuality = "high";
  context.drawImage(bitmap, 0, 0, width, height);
  bitmap.close();
  const blob = await new Promise((resolve, reject) =>
    canvas.toBlob((made) => (made ? resolve(made) : reject(new Error("the browser could not encode a JPEG"))),
      "image/jpeg", quality));
  return { blob, resized: true, width, height };
}

/**
 * POST one image to `${baseUrl}/predict`. Resolves to `{ ok, status, body }`, where `body` is the
 * API's JSON: the prediction, or `{ code, message }` for an error. Network failures reject.
 */
export async function predict(image, { baseUrl, apiKey = "", abstain = true, timeoutMs = 30000 } = {}) {
  const headers = { "Content-Type": image.type || "application/octet-stream" };
  if (apiKey) headers["x-api-key"] = apiKey;
  const url = new URL(`${baseUrl.replace(/\/+$/, "")}/predict`);
  if (!abstain) url.searchParams.set("abstain", "false");
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), timeoutMs);
  try {
    const response = await fetch(url, { method: "POST", headers, body: image, signal: controller.signal });
    let body;
    try {
      body = await response.json();
    } catch (error) {
      body = { code: "not_json", message: `HTTP ${response.status} without a JSON body` };
    }
    return { ok: response.ok, status: response.status, body };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * Downscale (unless `resize: false`), then predict: what the page does with a photo.
 * `sentBytes` is what went over the wire; `elapsedMs` runs from the file to the answer.
 */
export async function classify(file, options = {}) {
  const started = performance.now();
  const prepared = options.resize === false ? { blob: file, resized: false } : await downscale(file, options);
  const resizeMs = performance.now() - started;
  const answer = await predict(prepared.blob, options);
  return { ...answer, sentBytes: prepared.blob.size, resized: prepared.resized, resizeMs,
           elapsedMs: performance.now() - started };
}
