import type { Metadata } from "next";
import Link from "next/link";
import type { ReactNode } from "react";
import { currentSession } from "@/lib/session";
import "./globals.css";

export const metadata: Metadata = {
  title: "ViewBait gateway example",
  description: "Thumbnails generated through the ViewBait AI Gateway",
};

export default async function RootLayout({ children }: { children: ReactNode }) {
  const session = await currentSession();
  return (
    <html lang="en">
      <body>
        <header className="bar">
          <strong>ViewBait</strong>
          <nav>
            <Link href="/">Generate</Link>
            <Link href="/heatmap">Heatmap</Link>
          </nav>
          <span className="who">
            {session ? `${session.userId} · ${session.tier}` : <Link href="/signin">Sign in</Link>}
          </span>
        </header>
        <main>{children}</main>
      </body>
    </html>
  );
}
