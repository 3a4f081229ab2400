from yollava_cli.cli.app import main

main()
