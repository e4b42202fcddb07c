/**
 * Uploads with progress. A browser reports the bytes sent through XMLHttpRequest's upload
 * events (fetch has none, and Chromium streams request bodies only over HTTP/2); elsewhere (Node)
 * the body is streamed to fetch in chunks, counted as fetch takes them.
 */
import { SwitchboardError, responseError } from "./errors.js";
import type { UploadResult } from "./types.js";

export interface UploadProgress {
  /** Bytes sent so far. */
  loaded: number;
  /** The file's size. */
  total: number;
}

export interface UploadOptions {
  /** The file's type, e.g. `image/png`. */
  contentType: string;
  /** The file's name, kept with the upload. */
  name?: string;
  onProgress?: (progress: UploadProgress) => void;
  signal?: AbortSignal;
}

/** Bytes handed to fetch at a time, and so the steps of the progress reports. */
const CHUNK_BYTES = 64 * 1024;

export function upload(url: URL, token: string, file: Blob | Uint8Array, options: UploadOptions): Promise<UploadResult> {
  return typeof XMLHttpRequest === "function"
    ? uploadWithXhr(url, token, file, options)
    : uploadWithFetch(url, token, file, options);
}

async function uploadWithFetch(
  url: URL,
  token: string,
  file: Blob | Uint8Array,
  options: UploadOptions,
): Promise<UploadResult> {
  const bytes = file instanceof Uint8Array ? file : new Uint8Array(await file.arrayBuffer());
  const total = bytes.byteLength;
  let loaded = 0;
  const body = new ReadableStream<Uint8Array>({
    pull(controller) {
      if (loaded >= total) {
        controller.close();
        return;
      }
      const chunk = bytes.subarray(loaded, Math.min(total, loaded + CHUNK_BYTES));
      controller.enqueue(chunk);
      loaded += chunk.byteLength;
      options.onProgress?.({ loaded, total });
    },
  });
  const init: RequestInit & { duplex: "half" } = {
    method: "POST",
    headers: { authorization: `Bearer ${token}`, "content-type": options.contentType },
    body,
    duplex: "half",
    signal: options.signal ?? null,
  };
  const response = await fetch(url, init);
  if (!response.ok) throw await responseError(response);
  return (await response.json()) as UploadResult;
}

function uploadWithXhr(url: URL, token: string, file: Blob | Uint8Array, options: UploadOptions): Promise<UploadResult> {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", url);
    xhr.setRequestHeader("authorization", `Bearer ${token}`);
    xhr.setRequestHeader("content-type", options.contentType);
    xhr.upload.onprogress = (event) => options.onProgress?.({ loaded: event.loaded, total: event.total });
    xhr.onload = () => {
      const response = new Response(xhr.responseText, { status: xhr.status });
      if (response.ok) resolve(response.json() as Promise<UploadResult>);
      else responseError(response).then(reject);
    };
    xhr.onerror = () => reject(new SwitchboardError({ code: "network", message: "the upload failed" }));
    options.signal?.addEventListener("abort", () => xhr.abort());
    xhr.onabort = () => reject(new SwitchboardError({ code: "aborted", message: "the upload was aborted" }));
    xhr.send(file instanceof Uint8Array ? new Blob([file as BlobPart]) : file);
  });
}
