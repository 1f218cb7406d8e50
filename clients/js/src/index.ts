// danmaku-client: the viewer SDK of the danmaku server (README in this folder).
export { DanmakuClient } from "./client.js";
export { DanmakuError, errorFromResponse, type ErrorSource } from "./errors.js";
export type * from "./types.js";
