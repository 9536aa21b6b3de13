// `loralab/server`: the HTTP server whole — createServer, createApp, the Runner, the OpenAPI
// document, run-directory import and the request guards (packages/server).
export * from "@loralab/server";
