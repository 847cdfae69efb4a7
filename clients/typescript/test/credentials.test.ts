import assert from "node:assert/strict";
import { test } from "node:test";
import { actingAs, credentialHeaders } from "../src/index.js";

test("a user JWT is sent as a bearer token only", () => {
  assert.deepEqual(credentialHeaders({ token: "eyJhbGciOi.payload.sig" }), [
    ["authorization", "Bearer eyJhbGciOi.payload.sig"],
  ]);
});

test("a service token carries the user and tier it acts for", () => {
  assert.deepEqual(credentialHeaders({ token: "service-token-0123456789", userId: "u-42", tier: "pro" }), [
    ["authorization", "Bearer service-token-0123456789"],
    ["x-viewbait-user-id", "u-42"],
    ["x-viewbait-tier", "pro"],
  ]);
  assert.deepEqual(actingAs("u-7", "free"), [
    ["x-viewbait-user-id", "u-7"],
    ["x-viewbait-tier", "free"],
  ]);
});

test("no token sends nothing", () => {
  assert.deepEqual(credentialHeaders({}), []);
});

test("a user id or tier without a token is a mistake", () => {
  assert.throws(() => credentialHeaders({ userId: "u-42" }), /only sent with a/);
  assert.throws(() => credentialHeaders({ tier: "pro" }), /only sent with a/);
});

test("values headers cannot carry are refused", () => {
  for (const [token, userId] of [
    ["tok\r\nx-viewbait-tier: pro", "u-1"], // header injection
    ["", "u-1"],
    ["token", " u-1"],
    ["token", "usér"],
  ] as const) {
    assert.throws(() => credentialHeaders({ token, userId }), /printable ASCII/, `${token} / ${userId}`);
  }
});
