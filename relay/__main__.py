"""`python -m relay`: the alert relay under uvicorn on settings.host:relay_port."""

from __future__ import annotations

import logging


def main() -> None:
    """Build the app from the environment and serve it until SIGTERM/SIGINT."""
    import uvicorn

    from mlre.relay_config import RelayConfig
    from mlre.settings import apply_runtime_env, get_settings
    from relay.app import create_app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = get_settings()
    apply_runtime_env(settings, with_clients=False)
    uvicorn.run(
        create_app(settings, RelayConfig()),
        host=settings.host,
        port=settings.relay_port,
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
