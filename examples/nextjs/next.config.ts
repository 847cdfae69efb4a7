import { fileURLToPath } from "node:url";
import type { NextConfig } from "next";

// The gateway client comes from this repository (`file:../../clients/typescript`, a symlink):
// the build may read files up to the repository root.
const repositoryRoot = fileURLToPath(new URL("../..", import.meta.url));

const config: NextConfig = {
  // Loaded by Node at run time, not bundled: it is server-only (HTTP/2 gRPC through node:http2).
  serverExternalPackages: ["@viewbait/gateway-client"],
  turbopack: { root: repositoryRoot },
  outputFileTracingRoot: repositoryRoot,
  poweredByHeader: false,
};

export default config;
