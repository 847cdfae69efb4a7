// Signs a user in (the stand-in for the app's real authentication; see the README).
import { NextResponse } from "next/server";
import { SESSION_COOKIE, encodeSession, isTier, validUserId } from "@/lib/session";

/** A 303 to a path of this app (relative: the host the browser used stays, and its cookies). */
function seeOther(path: string): NextResponse {
  return new NextResponse(null, { status: 303, headers: { location: path } });
}

export async function POST(request: Request): Promise<Response> {
  const form = await request.formData();
  const userId = String(form.get("userId") ?? "").trim();
  const tier = String(form.get("tier") ?? "");
  if (!validUserId(userId) || !isTier(tier)) return seeOther("/signin?invalid=1");
  const response = seeOther("/");
  response.cookies.set(SESSION_COOKIE, encodeSession({ userId, tier }), {
    httpOnly: true,
    sameSite: "lax",
    path: "/",
    secure: request.headers.get("x-forwarded-proto") === "https",
  });
  return response;
}
