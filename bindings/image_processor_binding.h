// N-API bindings of the image / video-frame preprocessor (native/model/image_processor.h).
#pragma once
#include <napi.h>

// Adds to `exports`:
//   preprocessImage(rgb: Uint8Array, width, height, tileSize, maxNumTiles)
//     -> Promise<{ pixelValues: Float32Array [T,3,S,S], numTiles: number, grid: [nW, nH] }>
//   preprocessFrames(rgb: Uint8Array, width, height, numFrames, tileSize)
//     -> Promise<{ pixelValues: Float32Array [F,3,S,S], numFrames: number }>
//     (rgb holds numFrames frames of [height, width, 3] back to back)
//   selectTileGrid(width, height, tileSize, maxNumTiles) -> [nW, nH]   (synchronous)
// Work runs on a libuv worker thread; errors reject with an Error whose .code is the plm code name.
void RegisterImageProcessor(Napi::Env env, Napi::Object exports);
