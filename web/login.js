// Logging in to a server shared on the network: a form for the access token when the API answers 401,
// and a "Log out" button while a login cookie opens the album.

import * as api from "./api.js";

const $ = (id) => document.getElementById(id);

export class LoginPanel {
  constructor() {
    this.panel = $("login");
    this.form = $("login-form");
    this.input = $("token");
    this.error = $("login-error");
    this.logoutButton = $("logout");
    window.addEventListener(api.UNAUTHORIZED_EVENT, () => this.show());
    this.form.addEventListener("submit", (event) => { event.preventDefault(); this.submit(); });
    this.logoutButton.addEventListener("click", () => this.logout());
  }

  /** Shows "Log out" when this browser got in with the login cookie (not on loopback, where no one logs in). */
  async checkSession() {
    try {
      const session = await api.session();
      this.logoutButton.hidden = session.via !== "cookie";
    } catch {
      // the other requests say what is wrong with the server
    }
  }

  show() {
    if (!this.panel.hidden) return;
    document.body.classList.add("locked");
    this.panel.hidden = false;
    this.logoutButton.hidden = true;
    this.input.focus();
  }

  async submit() {
    const token = this.input.value.trim();
    if (!token) return;
    const button = this.form.querySelector("button");
    button.disabled = true;
    this.error.hidden = true;
    try {
      await api.login(token);
      location.reload(); // everything on the page starts again, now with the cookie
    } catch (error) {
      this.error.textContent = error.status === 401
        ? "That is not this album's access token. On the machine that runs clipalbum, `clipalbum token` shows it."
        : error.message;
      this.error.hidden = false;
      this.input.select();
      button.disabled = false;
    }
  }

  async logout() {
    try {
      await api.logout();
    } finally {
      location.reload();
    }
  }
}
