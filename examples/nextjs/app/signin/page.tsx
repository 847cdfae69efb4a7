// The stand-in sign-in: the real app has its own authentication (see the README).
import { TIERS } from "@/lib/session";

export default async function SignIn({ searchParams }: { searchParams: Promise<{ invalid?: string }> }) {
  const { invalid } = await searchParams;
  return (
    <form className="card" method="post" action="/api/session">
      <h1>Sign in</h1>
      {invalid ? <p className="problem">Use letters, digits, dots, dashes or @ for the user name.</p> : null}
      <label htmlFor="userId">User</label>
      <input id="userId" name="userId" type="text" required maxLength={64} autoComplete="username" />
      <label htmlFor="tier" style={{ marginTop: "0.75rem" }}>
        Plan
      </label>
      <select id="tier" name="tier" defaultValue="pro">
        {TIERS.map((tier) => (
          <option key={tier} value={tier}>
            {tier}
          </option>
        ))}
      </select>
      <div className="row">
        <button type="submit">Sign in</button>
      </div>
    </form>
  );
}
