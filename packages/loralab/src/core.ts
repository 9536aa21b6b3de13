// `loralab/core`: the training half alone (config, train, held-out loss, merge), without
// evaluation, analysis, the store or the server. The code lives in packages/engine.
export * from "@loralab/engine";
