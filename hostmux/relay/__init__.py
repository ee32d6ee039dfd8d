"""The asyncio shell relaying one browser connection to any ByteStream (router and auth helper)."""
